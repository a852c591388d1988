// MathJax 3 configuration for pymdownx.arithmatex (generic mode): only typeset the spans/divs
// arithmatex marks, and find MathJax's lazily loaded parts next to tex-svg.js on this site.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  svg: { fontCache: "global" },
};

// navigation.instant is off (site.py): every page is a full load, and MathJax typesets it on startup.
