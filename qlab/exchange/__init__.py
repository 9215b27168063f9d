"""Exchange access: ccxt clients, capabilities, error translation (the only layer that imports ccxt)."""
