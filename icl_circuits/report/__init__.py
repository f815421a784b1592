"""The report: a suite of analyses written to one self-contained HTML file.

``config``: what the suite runs on (``ReportConfig``, per-model presets, ``Section``, ``Context``);
``sections``, ``task_vector_sections``, ``circuit_sections``: the sections, which call methods;
``suite``: the sections in order (``SECTIONS``), running and HTML; ``verdicts``: claims and detectors.
"""

from icl_circuits.report.suite import ReportConfig, Section, failed_sections, run_suite, write_report

__all__ = ["ReportConfig", "Section", "failed_sections", "run_suite", "write_report"]
