"""The routes of ``profiles serve``, one module per resource."""
