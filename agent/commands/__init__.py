"""One module per `boxtel` subcommand (registered in agent.cli.COMMANDS)."""
