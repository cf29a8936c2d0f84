"""Policy model, selector language and the compiler from policies to rule sets (pure)."""
