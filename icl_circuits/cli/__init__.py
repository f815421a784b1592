"""The ``icl-circuits`` command line: ``common`` (the group, shared options, loading, ``--out``), ``main``
(the entry point and the general commands) and one module per command group (``dpca``, ``saliency``,
``interchange``, ``heads``, ``vectors``)."""
