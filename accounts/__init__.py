"""API tokens, bearer authentication and sign-in throttling."""
