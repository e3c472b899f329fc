"""jetsock edge node: aiohttp WebSockets in front of the core broker."""
