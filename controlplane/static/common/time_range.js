// The shared time-range picker (components/time_range.html) on pages whose charts a
// script draws: CP.timeRange(onChange) switches ranges in place, keeps ?range= in the
// URL (a view can be shared) and calls onChange(seconds, key); it returns the range the
// page opened with. Step: seconds per point for a range, at most ~720 points.
(function () {
  "use strict";
  window.CP = window.CP || {};
  function selected(nav) {
    const a = nav.querySelector("a.on") || nav.querySelector("a");
    return {seconds: Number(a.dataset.seconds), key: a.dataset.range};
  }
  CP.timeRange = function (onChange, root) {
    const nav = (root || document).querySelector("nav.time-range[data-time-range]");
    if (!nav) return null;
    nav.addEventListener("click", (event) => {
      const a = event.target.closest("a[data-range]");
      if (!a || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      for (const other of nav.querySelectorAll("a")) {
        other.classList.toggle("on", other === a);
        if (other === a) other.setAttribute("aria-current", "true"); else other.removeAttribute("aria-current");
      }
      const url = new URL(location.href);
      url.searchParams.set("range", a.dataset.range);
      history.replaceState(history.state, "", url);
      onChange(Number(a.dataset.seconds), a.dataset.range);
    });
    return selected(nav);
  };
  CP.rangeStep = function (seconds, interval, base) {
    const unit = base || 10;
    if (seconds <= 900) return Math.max(interval || 1, 1);
    return Math.max(unit, Math.ceil(seconds / 720 / unit) * unit);
  };
})();
