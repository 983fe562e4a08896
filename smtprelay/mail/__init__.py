"""The vocabulary every stage speaks: addresses, header fields, SMTP replies.

Leaf modules: they import nothing else of smtprelay, so any stage may use them.
"""
