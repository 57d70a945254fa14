"""benchstream: how fast the app relays a model's tokens to WebSocket clients, against two minimal relays."""
