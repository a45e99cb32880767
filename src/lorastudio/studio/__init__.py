"""The web studio: server-rendered pages under /studio over the service's own JSON API."""
