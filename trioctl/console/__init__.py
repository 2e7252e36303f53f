"""The web console: static files served at GET / by the daemon (trioctl._http)."""
