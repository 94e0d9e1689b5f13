// The owner's pages: the Storage page follows the pairing window live (no reload), and the
// invitation page copies its code. No inline script anywhere (the CSP forbids it).
'use strict';
(function () {
  var copy = document.getElementById('copy');
  var code = document.getElementById('invitation');
  if (copy && code && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener('click', function () {
      navigator.clipboard.writeText(code.value).then(function () { copy.textContent = 'Copied'; });
    });
  }

  var pairing = document.getElementById('pairing');
  if (!pairing || !pairing.dataset.follow) {
    return;
  }
  function follow() {
    fetch('/admin/api/storage', { credentials: 'same-origin' })
      .then(function (r) { return r.json(); })
      .then(function (a) {
        if (a.window) {
          pairing.textContent = 'The pairing window is open for ' +
            Math.ceil(a.window.remaining_ms / 1000) + ' s: press the button on the other plug now.';
          setTimeout(follow, 1000);
        } else if (a.pairing && a.pairing.busy) {
          pairing.textContent = 'Finishing the pairing…';
          setTimeout(follow, 1000);
        } else {
          // Over: the page shows the new partner list and the outcome.
          location.reload();
        }
      })
      .catch(function () { setTimeout(follow, 2000); });
  }
  follow();
})();
