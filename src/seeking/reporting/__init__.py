"""Tables and reports of finished runs."""

from .comparison import comparison_rows, csv_table, efficiency_gain, markdown_table

__all__ = ["comparison_rows", "csv_table", "efficiency_gain", "markdown_table"]
