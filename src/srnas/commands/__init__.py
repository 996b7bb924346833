"""One module per ``srnas`` subcommand: argument parsing plus a thin call into the library."""
