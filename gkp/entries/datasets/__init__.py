"""The datasets a config can name (``data.name``)."""
