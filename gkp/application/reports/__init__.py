"""Results as terminal tables, paper tables and figures."""
