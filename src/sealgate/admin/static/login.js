"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const error = document.getElementById("error");
  if (params.get("error")) {
    error.textContent = "Sign-in failed: " + params.get("error");
    error.hidden = false;
  }
  fetch("/login/options", {credentials: "same-origin"}).then(r => r.json()).then(o => {
    if (o.oidc) {
      document.getElementById("oidc").hidden = false;
      document.getElementById("issuer").textContent = "Issuer: " + o.issuer;
    }
  }).catch(() => {});
})();
