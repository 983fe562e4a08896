"""Who may send what: identities, quotas, configuration sets, the suppression list,
pauses, the reputation guard and the content SES refuses.

Policy answers with `mail.replies.Reply` values, never with protocol code, so every
front door (SMTP today, the SES API next) gets the same answers.
"""
