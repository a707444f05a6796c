"""MRQ: Mongo Redis Queue."""
