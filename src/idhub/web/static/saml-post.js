// Sends the SAML message on to the service provider as soon as the page loads (the button is
// there for browsers without JavaScript).
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("saml-post");
  if (form) { form.submit(); }
});
