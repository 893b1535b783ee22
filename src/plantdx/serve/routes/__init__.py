"""One router per concern: diagnosis (predict, batch, jobs), model (info, advice, admin), operations (health)."""
