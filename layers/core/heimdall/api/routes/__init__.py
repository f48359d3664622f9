"""The API's routes, one Powertools ``Router`` per resource; ``heimdall.api.app`` includes them."""
