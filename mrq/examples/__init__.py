"""Example tasks run by ``mrq-embedded`` (``mrq.examples.tasks.Add`` ...)."""
