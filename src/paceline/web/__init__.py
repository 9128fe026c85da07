"""HTTP: the JSON API, the HTML page, health checks, and problem+json errors."""
