"""Ready-made attack suites a config can name among its attacks."""
