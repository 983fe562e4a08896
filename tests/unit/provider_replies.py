"""Replies as the big providers send them, for the bounce classification and DSN tests:
Gmail's multi-line "550-5.1.1 ..." continuation style, Microsoft's single-line replies,
Yahoo's "dd" codes, so that what is tested is what the delivery side actually receives.
"""

GMAIL_NO_USER = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550-5.1.1 unnecessary spaces. Learn more at\r\n"
    "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp"
)
GMAIL_OVER_QUOTA = (
    "552-5.2.2 The email account that you tried to reach is over quota. Please direct\r\n"
    "552-5.2.2 the recipient to\r\n"
    "552 5.2.2  https://support.google.com/mail/?p=OverQuotaPerm a1si123 - gsmtp"
)
GMAIL_UNSOLICITED = (
    "550-5.7.1 [192.0.2.1      12] Our system has detected that this message is\r\n"
    "550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\r\n"
    "550-5.7.1 this message has been blocked. Please visit\r\n"
    "550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError a1si - gsmtp"
)
GMAIL_RATE = (
    "421-4.7.0 [192.0.2.1      15] Our system has detected an unusual rate of\r\n"
    "421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n"
    "421-4.7.0 users from spam, mail sent from your IP address has been temporarily\r\n"
    "421 4.7.0 rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError"
)
GMAIL_ATTACHMENT = (
    "552-5.7.0 This message was blocked because its content presents a potential\r\n"
    "552-5.7.0 security issue. Please visit\r\n"
    "552-5.7.0  https://support.google.com/mail/?p=BlockedMessage to review our\r\n"
    "552 5.7.0 message content and attachment content guidelines. a1si - gsmtp"
)
GMAIL_UNAUTHENTICATED = (
    "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\r\n"
    "550 5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM."
)
OUTLOOK_UNAVAILABLE = "550 5.5.0 Requested action not taken: mailbox unavailable"
OUTLOOK_BLOCK_LIST = (
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact "
    "your Internet service provider since part of their network is on our block list "
    "(S3150). You can also refer your provider to http://mail.live.com/mail/"
    "troubleshooting.aspx#errors. [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"
)
OUTLOOK_FULL = "452 4.2.2 The recipient's mailbox is full and can't accept messages now."
OUTLOOK_NOT_FOUND = (
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
)
OUTLOOK_BANNED_IP = "550 5.7.606 Access denied, banned sending IP [192.0.2.1]."
YAHOO_NO_ACCOUNT = (
    "554 delivery error: dd This user doesn't have a yahoo.com account "
    "(someone@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com"
)
YAHOO_DEFERRED = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
    "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
