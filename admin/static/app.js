// keycap admin: small enhancements; every page works without this file.
document.querySelectorAll("button.copy").forEach(function (button) {
  button.addEventListener("click", function () {
    var source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    });
  });
});
// The store's budget line: what would be left after the cap being typed.
(function () {
  var cap = document.getElementById("cap");
  var available = document.getElementById("available");
  var after = document.getElementById("after-cap");
  if (!cap || !available || !after) return;
  function nanos(text) {
    var match = /^\s*\$?(\d+)(?:\.(\d{0,9}))?\s*$/.exec(text);
    if (!match) return null;
    var frac = (match[2] || "").padEnd(9, "0");
    return BigInt(match[1]) * 1000000000n + BigInt(frac);
  }
  function show(n) {
    var negative = n < 0n; if (negative) n = -n;
    var cents = (n + 5000000n) / 10000000n;
    return (negative ? "-$" : "$") + (cents / 100n) + "." + String(cents % 100n).padStart(2, "0");
  }
  function update() {
    var wanted = nanos(cap.value);
    if (wanted === null) { after.textContent = ""; return; }
    var left = BigInt(available.dataset.nanos) - wanted;
    after.textContent = left < 0n ? " (this cap is more than is left)" : " (" + show(left) + " after this key)";
  }
  cap.addEventListener("input", update);
  update();
})();
