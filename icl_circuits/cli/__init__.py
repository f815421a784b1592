"""The ``icl-circuits`` command line: ``main`` (the group and the general commands) and
``analyses`` (one subcommand per analysis)."""
