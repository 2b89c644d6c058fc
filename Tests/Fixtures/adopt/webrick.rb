# Ruby's WEBrick binding its own port (Port: 8000), shut down on SIGTERM.
require 'webrick'
server = WEBrick::HTTPServer.new(Port: Integer(ENV.fetch('PORT', '8000')), BindAddress: '127.0.0.1',
                                 Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN), AccessLog: [])
server.mount_proc('/') { |_, res| res.body = "hello from generation #{ENV['BATON_GENERATION']} pid #{Process.pid}\n" }
trap('TERM') { server.shutdown }
server.start
