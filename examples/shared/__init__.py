"""What both example systems share: settings, signing in through idhub, local sessions that
back-channel logout can end, and the page layout. A real system would hold its own copy."""
