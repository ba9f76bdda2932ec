"""The browser app over the event store (``anomalens serve``)."""
