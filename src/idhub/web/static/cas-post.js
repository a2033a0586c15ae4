// CAS method=POST: hand the ticket to the service at once (the button is the fallback).
document.getElementById("cas-post").submit();
