#!/usr/bin/env bash
# Layering rules of STYLE.md: uv.h and llhttp.h only in server/, sqlite3.h only in store/,
# cblas.h only in core/gemm.c; core/ includes nothing from store/, api/, server/.
set -u
cd "$(dirname "$0")/.."
bad=0
check() { # pattern allowed-regex message
  local hits
  hits=$(grep -rlE "$1" core store api server 2>/dev/null | grep -vE "$2" || true)
  if [ -n "$hits" ]; then echo "lint: $3: $hits"; bad=1; fi
}
check '#include [<"]uv\.h[>"]' '^server/' 'uv.h outside server/'
check '#include [<"]llhttp\.h[>"]' '^server/' 'llhttp.h outside server/'
check '#include [<"]sqlite3\.h[>"]' '^store/' 'sqlite3.h outside store/'
check '#include [<"]cblas\.h[>"]' '^core/gemm\.c$' 'cblas.h outside core/gemm.c'
check '#include "(store|api|server)/' '^(store|api|server)/' 'core/ includes an upper layer'
check '#include "(api|server)/' '^(api|server)/' 'store/ includes api/ or server/'
check '#include "server/' '^server/' 'api/ includes server/'
[ $bad -eq 0 ] && echo "lint: ok"
exit $bad
