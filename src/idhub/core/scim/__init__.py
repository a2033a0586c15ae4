"""SCIM 2.0 service provider rules (RFC 7643 / 7644): filters, PATCH, ownership, ETags.

Resources are handled as plain JSON documents (what a client sent, normalised); the web layer
only parses HTTP and renders what `ScimService` answers."""
