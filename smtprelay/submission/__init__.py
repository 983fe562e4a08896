"""Acceptance: the seam every front door hands a message to (`seam`), and the
pipeline behind it (`pipeline`): policy, transforms, then the spool.
"""
