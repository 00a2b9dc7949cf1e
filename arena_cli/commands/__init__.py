"""One module per `arena` subcommand: HELP, add_arguments(parser), run(args, cfg) -> int. Parse, build the
configuration, call the library; no service logic lives here."""
