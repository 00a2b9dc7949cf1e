"""The top floor: the `arena` command (arena_cli.main), one module per subcommand (arena_cli.commands), and
what only commands use: the demo, its model zoo, the terminal and report views. May import anything."""
