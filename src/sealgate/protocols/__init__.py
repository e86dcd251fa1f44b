"""Built-in protocol plugins, one package each (sans-IO codec, Twisted protocols, replay)."""
