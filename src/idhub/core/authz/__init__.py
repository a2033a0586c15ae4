"""Authorization: the policy vocabulary, checks, the decision engine, data scopes and the
live service that reloads and answers."""
