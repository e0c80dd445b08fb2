"""Local aiohttp servers that behave like the services patterd talks to (see each module)."""
