"""One module per ``iceb`` subcommand; each defines ``register(subparsers)``."""
