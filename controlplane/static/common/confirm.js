// Forms that ask before they act: <form data-confirm="Delete it?">. (No inline handlers:
// the Content-Security-Policy allows scripts from this site's files only.)
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
}, true);
