"""The report: a suite of analyses written to one self-contained HTML file.

``suite``: configuration, the section registry, running and HTML; ``sections``: the sections.
"""

from icl_circuits.report.suite import ReportConfig, Section, failed_sections, run_suite, write_report

__all__ = ["ReportConfig", "Section", "failed_sections", "run_suite", "write_report"]
