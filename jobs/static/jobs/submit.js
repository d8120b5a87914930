// The submit page's two tabs (recipe form, YAML editor), switched without a reload.
document.querySelectorAll(".tabs a[data-tab]").forEach((tab) => tab.addEventListener("click", (event) => {
  event.preventDefault();
  document.querySelectorAll(".tabs a").forEach((a) => a.classList.toggle("on", a === tab));
  for (const name of ["recipe", "yaml"]) document.getElementById("tab-" + name).hidden = name !== tab.dataset.tab;
}));
