"""Model backends shared by generation and judge pools: transformers, vLLM, OpenAI-compatible, replay."""
