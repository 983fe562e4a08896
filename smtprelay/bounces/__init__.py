"""Bounce knowledge shared by delivery and the feedback loop: SES bounce types from
SMTP replies, VERP envelope senders and the Return-Path domain.
"""
