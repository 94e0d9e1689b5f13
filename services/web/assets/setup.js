// The claim page: long-polls the server until the device's button is pressed, without reloading.
// The setup page: shows the storage slider's value. No inline script anywhere (the CSP forbids it).
'use strict';
(function () {
  var offer = document.getElementById('offer');
  var offerValue = document.getElementById('offer-value');
  if (offer && offerValue) {
    var show = function () { offerValue.textContent = offer.value + ' GiB'; };
    offer.addEventListener('input', show);
    show();
  }

  var status = document.getElementById('status');
  var again = document.getElementById('again');
  if (!status || !again) {
    return;
  }
  function poll() {
    fetch('/setup/api/wait', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: '{}'
    })
      .then(function (r) { return r.json(); })
      .then(function (a) {
        if (a.state === 'granted') {
          location.assign('/setup');
        } else if (a.state === 'set-up') {
          location.assign('/admin/login');
        } else if (a.state === 'waiting') {
          status.textContent = 'Waiting for the button…';
          poll();
        } else {
          status.textContent = a.message || 'Something went wrong.';
          again.hidden = false;
        }
      })
      .catch(function () {
        // The device restarting or the network gone for a moment: keep trying, gently.
        status.textContent = 'Lost the device for a moment; still waiting for the button…';
        setTimeout(poll, 2000);
      });
  }
  // "Waiting for the button" only once the device has answered: a press before that is not
  // this page's.
  again.addEventListener('click', function () {
    again.hidden = true;
    status.textContent = 'Reaching the device…';
    poll();
  });
  poll();
})();
