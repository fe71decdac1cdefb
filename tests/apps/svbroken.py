"""An app module that cannot be imported: the supervisor's boot-failure test."""

raise RuntimeError("svbroken: the database URL is not configured")
