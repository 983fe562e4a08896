"""What every stage stands on, knowing nothing of mail: durable file writes, TLS
contexts, password hashes, metrics and logging set-up, the PROXY protocol of
listeners behind a load balancer.

Leaf modules: they import nothing of smtprelay outside this package.
"""
