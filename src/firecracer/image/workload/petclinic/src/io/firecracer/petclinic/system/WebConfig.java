package io.firecracer.petclinic.system;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.databind.DeserializationContext;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.deser.std.FromStringDeserializer;
import com.fasterxml.jackson.databind.module.SimpleModule;
import com.fasterxml.jackson.databind.ser.std.ToStringSerializer;
import java.nio.charset.StandardCharsets;
import java.time.LocalDate;
import java.util.List;
import org.springframework.context.annotation.Bean;
import org.springframework.core.annotation.Order;
import org.springframework.core.io.ResourceLoader;
import org.springframework.format.support.DefaultFormattingConversionService;
import org.springframework.format.support.FormattingConversionService;
import org.springframework.http.converter.HttpMessageConverter;
import org.springframework.http.converter.StringHttpMessageConverter;
import org.springframework.http.converter.json.MappingJackson2HttpMessageConverter;
import org.springframework.http.converter.support.AllEncompassingFormHttpMessageConverter;
import org.springframework.stereotype.Component;
import org.springframework.web.bind.support.ConfigurableWebBindingInitializer;
import org.springframework.web.servlet.mvc.annotation.ResponseStatusExceptionResolver;
import org.springframework.web.servlet.mvc.method.annotation.ExceptionHandlerExceptionResolver;
import org.springframework.web.servlet.mvc.method.annotation.RequestMappingHandlerAdapter;
import org.springframework.web.servlet.mvc.method.annotation.RequestMappingHandlerMapping;
import org.springframework.web.servlet.mvc.support.DefaultHandlerExceptionResolver;

/**
 * Spring MVC's infrastructure, declared bean by bean: what {@code @EnableWebMvc} would import is a full
 * {@code @Configuration} class (Debian's CGLIB cannot enhance it), and without these beans the
 * DispatcherServlet of Spring 4.3 falls back to the deprecated pre-3.1 annotation handlers. Handler
 * mapping and adapter for {@code @RequestMapping} methods, Jackson for {@code @ResponseBody} and
 * {@code @RequestBody}, conversion and formatting ({@code @DateTimeFormat}) for form binding, exception
 * resolvers ({@code @ExceptionHandler}, {@code @ResponseStatus}, Spring's standard 4xx mapping) and the
 * template view resolver.
 */
@Component
public class WebConfig {
    /** ISO dates ({@code 2013-01-04}) in JSON without jackson-datatype-jsr310 (Debian has none). */
    static final class LocalDateDeserializer extends FromStringDeserializer<LocalDate> {
        private static final long serialVersionUID = 1L;

        LocalDateDeserializer() { super(LocalDate.class); }

        @Override
        protected LocalDate _deserialize(String value, DeserializationContext ctxt) {
            return LocalDate.parse(value.trim());
        }
    }

    @Bean
    public ObjectMapper objectMapper() {
        SimpleModule dates = new SimpleModule("petclinic-dates");
        dates.addSerializer(LocalDate.class, ToStringSerializer.instance);
        dates.addDeserializer(LocalDate.class, new LocalDateDeserializer());
        ObjectMapper om = new ObjectMapper().registerModule(dates);
        om.disable(SerializationFeature.FAIL_ON_EMPTY_BEANS);
        om.enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION);
        return om;
    }

    @Bean
    public FormattingConversionService mvcConversionService() { return new DefaultFormattingConversionService(); }

    @Bean
    @Order(1)
    public StringHttpMessageConverter stringHttpMessageConverter() {
        return new StringHttpMessageConverter(StandardCharsets.UTF_8);
    }

    @Bean
    @Order(2)
    public MappingJackson2HttpMessageConverter jacksonHttpMessageConverter(ObjectMapper objectMapper) {
        return new MappingJackson2HttpMessageConverter(objectMapper);
    }

    @Bean
    @Order(3)
    public AllEncompassingFormHttpMessageConverter formHttpMessageConverter() {
        return new AllEncompassingFormHttpMessageConverter();
    }

    @Bean
    public RequestMappingHandlerMapping requestMappingHandlerMapping() {
        RequestMappingHandlerMapping m = new RequestMappingHandlerMapping();
        m.setOrder(0);
        m.setUseSuffixPatternMatch(false);  // /owners/1.json is not /owners/1
        return m;
    }

    @Bean
    public RequestMappingHandlerAdapter requestMappingHandlerAdapter(FormattingConversionService mvcConversionService,
                                                                     List<HttpMessageConverter<?>> messageConverters) {
        ConfigurableWebBindingInitializer init = new ConfigurableWebBindingInitializer();
        init.setConversionService(mvcConversionService);
        RequestMappingHandlerAdapter a = new RequestMappingHandlerAdapter();
        a.setMessageConverters(messageConverters);
        a.setWebBindingInitializer(init);
        a.setIgnoreDefaultModelOnRedirect(true);
        return a;
    }

    @Bean
    public ExceptionHandlerExceptionResolver exceptionHandlerExceptionResolver(
            List<HttpMessageConverter<?>> messageConverters) {
        ExceptionHandlerExceptionResolver r = new ExceptionHandlerExceptionResolver();
        r.setMessageConverters(messageConverters);
        r.setOrder(0);
        return r;
    }

    @Bean
    public ResponseStatusExceptionResolver responseStatusExceptionResolver() {
        ResponseStatusExceptionResolver r = new ResponseStatusExceptionResolver();
        r.setOrder(1);
        return r;
    }

    @Bean
    public DefaultHandlerExceptionResolver defaultHandlerExceptionResolver() {
        DefaultHandlerExceptionResolver r = new DefaultHandlerExceptionResolver();
        r.setOrder(2);
        return r;
    }

    @Bean
    public TemplateViewResolver viewResolver(ResourceLoader resourceLoader) {
        return new TemplateViewResolver(resourceLoader);
    }
}
