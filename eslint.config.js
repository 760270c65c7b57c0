// The Fastify family's lint config (STYLE.md "Tooling"); it also formats.
'use strict'
module.exports = [
  ...require('neostandard')({
    ts: true,
    ignores: ['dist/**', 'bench/results/**', '.tap/**', '.data/**', 'coverage/**'],
  }),
  {
    rules: {
      // `void promise` marks a promise left running on purpose; as an expression `void` stays refused.
      'no-void': ['error', { allowAsStatement: true }],
    },
  },
]
