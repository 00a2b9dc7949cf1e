"""The flywheel trainer: failures -> selection -> SFT/DPO/reward/RL batches -> TRL -> checkpoints."""
