"""The interceptor chain shared by all protocols, and its built-in interceptors."""
